"""Int8 quantization: the PT2E quantizer and the QAT stage built on it."""
