"""`make demo`: the whole pipeline on the bundled data, run the way a user runs it.

`urls` writes the URL list (stratified test split plus deliberately broken URLs), `server` serves
the bundled images from a throwaway loopback HTTP server, `pipeline` runs the three user commands
as subprocesses. Nothing here imports torch: the stages do the work in their own processes.
"""
