"""The algorithm, with no I/O: noise, exact statistics, the smoothed classifier (Cohen et
al.'s PREDICT and CERTIFY), sequential certification and certification methods as objects."""
