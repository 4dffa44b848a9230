"""The prompt-advice benchmark: advice per second, and its cost against the generation request it rides on."""
