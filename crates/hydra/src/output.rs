//! Output for people (tables) and scripts (`--json`) (being built).
