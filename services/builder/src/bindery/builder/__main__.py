"""`python -m bindery.builder`: run the builder service."""

from bindery.builder.app import main

main()
