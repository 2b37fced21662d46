"""`scd play`: stream a world model to a web page and play it with the keyboard.

engine.py generates frames in a worker thread (one Streamer.step per frame); server.py serves the page
(static/) and talks to it over a WebSocket; the command is scd/cli/play.py.
"""
