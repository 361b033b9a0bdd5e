"""Benchmarks: speed (throughput, MACs, memory, vs reference implementations) and quality
(several variants trained on one task under the same budget).

    zoo bench speed "vit_small*" --vs-peers
    zoo bench quality
    zoo bench generate transformer_tiny
"""
