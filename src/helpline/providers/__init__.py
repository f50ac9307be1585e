"""Answer providers behind one Protocol; the router (a provider itself) fails over between them."""
