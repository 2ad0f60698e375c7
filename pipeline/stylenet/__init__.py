"""The collection path: train a feed-forward style network with a grid job's objective
(`nst train`, Ray Train), apply it to a collection (`nst apply`, Ray Data), list trained
networks (`nst models`). Storage, fingerprints, leases and scoring are the run path's own."""
