"""Ensembles of prediction files: store, combiners, Ray Tune search, view aggregation, calibration,
recipes, submissions and reports. Imports only from cxrlt/, never from trainers/, synth/ or cluster/."""
