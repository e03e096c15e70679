"""Home-care visits: the home-care service's workers and their visits to clients (docs/visits.md)."""
