"""Model shapes the benchmarks build as random models (real architectures, no download)."""

# SmolLM2-135M-Instruct's config: 576 wide, 30 layers, 9 heads / 3 KV heads, vocabulary 49,152, tied head
SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=2048,
                    rope_theta=100000.0, rms_norm_eps=1e-5)
