"""Energy check, fixed points, why a query did not retrieve, and the dynamics atlas."""
