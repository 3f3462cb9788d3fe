"""CPU kernels written in C++ and compiled on first use (torch's extension builder; the
build is cached on disk, so later processes load it in well under a second)."""
