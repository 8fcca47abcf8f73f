//! Placeholder: the Envoy dynamic-modules ABI subset Maille uses (being written).
