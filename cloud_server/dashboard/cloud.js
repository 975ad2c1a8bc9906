// The cloud dashboard: one read of /v1/dashboard a second (the figures behind /metrics, as JSON);
// rates come from two consecutive reads of the counters.
"use strict";

function total(value) {
  if (value === undefined || value === null) return 0;
  if (typeof value === "number") return value;
  return Object.values(value).reduce((a, b) => a + b, 0);
}

function ratio(a, b, digits = 2) {
  return b > 0 ? (a / b).toFixed(digits) : "–";
}

function bytes(n) {
  if (n >= 1 << 20) return (n / (1 << 20)).toFixed(1) + " MiB";
  if (n >= 1 << 10) return (n / (1 << 10)).toFixed(1) + " KiB";
  return n + " B";
}

function labelled(value) {
  return Object.entries(value || {}).map(([k, v]) => `${k} ${v}`).join(", ") || "0";
}

let previous = null;

function render(data) {
  const m = data.metrics;
  el("model").textContent = data.model ? `${data.model} · exits ${data.exit_layers.join(", ") || "none"}` : "loading";
  el("active").textContent = m.eespec_active_sessions;
  el("detached").textContent = m.eespec_detached_sessions;
  el("kv").textContent = bytes(m.eespec_kv_cache_bytes);
  el("queue").textContent = m.eespec_queue_depth;
  const rounds = m.eespec_rounds_total || 0;
  el("rounds").textContent = rounds;
  el("acceptance").textContent = ratio(m.eespec_accepted_tokens_total || 0, m.eespec_draft_tokens_total || 0);
  el("accepted-round").textContent = ratio(m.eespec_accepted_tokens_total || 0, rounds);
  el("verify-ms").textContent =
    m.eespec_verify_seconds_count > 0 ? (1000 * m.eespec_verify_seconds_sum / m.eespec_verify_seconds_count).toFixed(1) + " ms" : "–";
  const tokens = total(m.eespec_generated_tokens_total);
  if (previous) {
    const dt = data.t - previous.t;
    if (dt > 0) {
      el("rounds-rate").textContent = ((rounds - (previous.metrics.eespec_rounds_total || 0)) / dt).toFixed(2);
      el("tokens-rate").textContent = ((tokens - total(previous.metrics.eespec_generated_tokens_total)) / dt).toFixed(2);
      const busy = (m.eespec_busy_seconds_total || 0) - (previous.metrics.eespec_busy_seconds_total || 0);
      el("busy").textContent = (100 * busy / dt).toFixed(0) + " %";
    }
  }
  const exits = el("exits");
  exits.replaceChildren();
  const predictions = m.eespec_early_predictions_total || {};
  const hits = m.eespec_early_hits_total || {};
  for (const layer of data.exit_layers) {
    const row = document.createElement("tr");
    const n = predictions[String(layer)] || 0;
    row.innerHTML = `<th>after layer ${layer}</th><td>${ratio(hits[String(layer)] || 0, n)} <small>(${n} rounds)</small></td>`;
    exits.appendChild(row);
  }
  el("requests").textContent = labelled(m.eespec_requests_total);
  el("errors").textContent = labelled(m.eespec_errors_total);
  previous = data;
}

async function poll() {
  try {
    const response = await authFetch("/v1/dashboard");
    if (response.status === 401) return loggedOut("the key stopped working");
    render(await response.json());
    el("conn").textContent = "live · updated " + new Date().toLocaleTimeString();
  } catch (err) {
    el("conn").textContent = "server unreachable";
  }
  setTimeout(poll, 1000);
}

setupLogin("/v1/dashboard", poll);
