"""Faces: the command line (typer), the console (the only place events become text or
--json), the interactive terminal, typed commands."""
