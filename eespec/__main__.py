from eespec.cli import app

app()
