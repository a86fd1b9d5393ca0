from autarky.cli import main

main()
