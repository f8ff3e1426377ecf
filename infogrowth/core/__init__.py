"""The algorithm core without Kafka: the paper's stages (encode, clean, gain, select), filters."""
