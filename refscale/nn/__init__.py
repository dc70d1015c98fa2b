"""Neural-network building blocks shared by every model (invertible blocks, subnets)."""
