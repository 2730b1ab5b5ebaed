"""The small centre everything else uses: specs, protocols, surgery, params, checkpoints, registries."""
