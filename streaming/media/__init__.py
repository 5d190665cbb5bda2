"""Media plumbing shared by transports: PCM buffering and resampling, audio/video codecs."""
