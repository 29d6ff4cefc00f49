"""What training reads: views of a store (`views`: splits and features), clips straight from a
frame store (`clips`), and how a joint run's batches mix its datasets (`mixing`)."""
