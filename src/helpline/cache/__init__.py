"""The answer cache: an exact tier and a guarded semantic tier, scoped, tagged, on Redis or in memory."""
