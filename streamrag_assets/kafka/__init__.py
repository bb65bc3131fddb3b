"""The Kafka box: topic admin, offsets and range reading, gap classification, and the Spark data source over them."""
