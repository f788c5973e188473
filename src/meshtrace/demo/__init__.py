"""Demo applications that run inside the local mesh."""
