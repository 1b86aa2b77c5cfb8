//! Audio codecs and helpers: Opus through libopus, PCM16, WAV.
