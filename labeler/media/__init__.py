"""Media: reading, probing, sampling and resizing video frames, and encoding images for judges."""
