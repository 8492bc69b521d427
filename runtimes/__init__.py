"""Runtime layer: numpy in, numpy out. Imports no torch, so on-device apps need numpy + one backend."""
