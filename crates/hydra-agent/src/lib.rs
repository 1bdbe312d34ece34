//! hydra-agent
