"""`python -m bindery.resolver`: run the resolver service."""

from bindery.resolver.app import main

main()
