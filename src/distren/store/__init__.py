"""Persistent state: the SQLite database and the content-addressed blob store."""
