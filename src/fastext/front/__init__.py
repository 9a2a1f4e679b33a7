"""The front process: the gRPC server, one session per call, the descriptor protocol and
security. It never touches pixels: frames go to a backend (:mod:`fastext.backend`)."""
