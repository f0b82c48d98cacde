"""`osma-router replay`: captured deliveries sent again, over HTTP, onto the queue or inline."""
