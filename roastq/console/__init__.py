"""The console (``roastq console``): server-rendered pages for the people who run the queue.

app.py builds the Flask app (pages and actions), access.py checks who may use it and protects
the actions, server.py serves it. It reads Postgres through the same functions and named queries
as the CLI (roastq/ops/views.py, roastq/cli/admin.py); docs/console.md is the operator's guide.
"""
