"""`python -m bindery.culler`: run the culler service."""

from bindery.culler.app import main

main()
