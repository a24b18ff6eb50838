"""Audio in: decoding, music libraries (synthetic, folders, Debian), background noise and rooms."""
