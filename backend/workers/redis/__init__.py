"""Private to the Redis store: key names, scripts, the record codec, the reset watch, lua/."""
