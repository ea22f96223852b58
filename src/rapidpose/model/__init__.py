"""The network: ViTPose (S/B/L/H, classic and simple heads, ViTPose++ experts), checkpoint layouts, the model zoo."""
