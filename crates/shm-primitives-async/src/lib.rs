//! OS wake-ups and descriptor passing for vox-shm (doorbells, mapping control channel).
