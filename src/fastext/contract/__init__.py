"""What client and server share of the contract beyond the generated messages: the
per-frame messages encoded by hand (:mod:`~fastext.contract.wire`) and the inference
metadata JSON form (:mod:`~fastext.contract.metadata`)."""
