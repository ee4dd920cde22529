"""The mitigation's parts: its gender lexicon (word lists shipped as package data), and the terms built on it."""
