"""wxens workflows package."""
