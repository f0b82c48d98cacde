"""Events, routes, Osmos schemas, signatures and settings: the formats, without Redis or HTTP."""
