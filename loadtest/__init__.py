"""Load-testing tools and benchmark models for tensorgate."""
