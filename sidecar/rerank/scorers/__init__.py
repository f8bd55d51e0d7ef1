"""Scorer backends behind one Protocol (``base.Scorer``): ``local`` runs models in this process."""
