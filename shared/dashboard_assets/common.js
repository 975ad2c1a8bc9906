// Shared by the dashboard pages: the key lives in sessionStorage (this tab only) and travels as an
// `Authorization: Bearer` header on fetches, never in a URL. Nothing is shown until the server accepts it.
"use strict";

const KEY_ITEM = "eespec-dashboard-key";

function storedKey() {
  return sessionStorage.getItem(KEY_ITEM) || "";
}

async function authFetch(path, options = {}) {
  const headers = Object.assign({}, options.headers || {}, { Authorization: "Bearer " + storedKey() });
  return fetch(path, Object.assign({}, options, { headers, cache: "no-store" }));
}

function el(id) {
  return document.getElementById(id);
}

function fmt(value, digits = 2) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

// Wires the login form: `probe` is a key-protected path; `start()` runs once the key is accepted.
function setupLogin(probe, start) {
  const form = el("login");
  const app = el("app");
  async function tryKey(key) {
    sessionStorage.setItem(KEY_ITEM, key);
    let response;
    try {
      response = await authFetch(probe);
    } catch (err) {
      el("login-error").textContent = "server unreachable";
      return;
    }
    if (response.status === 401) {
      sessionStorage.removeItem(KEY_ITEM);
      el("login-error").textContent = "wrong API key";
      return;
    }
    el("login-error").textContent = "";
    form.hidden = true;
    app.hidden = false;
    start();
  }
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    tryKey(el("key").value);
  });
  const logout = el("logout");
  if (logout) {
    logout.addEventListener("click", () => {
      sessionStorage.removeItem(KEY_ITEM);
      location.reload();
    });
  }
  if (storedKey()) tryKey(storedKey());
}

// Back to the login form (the key stopped working).
function loggedOut(message) {
  sessionStorage.removeItem(KEY_ITEM);
  el("app").hidden = true;
  el("login").hidden = false;
  el("login-error").textContent = message;
}
