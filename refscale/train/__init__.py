"""Model-agnostic training engine (`refscale train CONFIG.yaml`)."""
