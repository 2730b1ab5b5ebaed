"""hf_peft."""
