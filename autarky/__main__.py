"""`python -m autarky`: what torchrun starts (`torchrun --nproc-per-node N -m autarky train ...`)."""

from autarky.cli import main

main()
