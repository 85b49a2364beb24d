"""One driver per paper: ``cxrkit reproduce <paper>`` chains the stages with the paper's protocol,
resumable stage by stage, and writes the paper's tables.

Each driver is a module here (``barlowtwins_cxr``, ``scxnn``, ``kcr``, ``guendel``) with a
``run(...)`` function; :mod:`cxrkit.reproduce.pipeline` is what they share: the stage runner that
skips finished stages, the plan printed before starting, and the table writers. ``--scale tiny``
runs the same chain as ``--scale paper`` on synthetic phantoms at tiny sizes.
"""

from cxrkit.reproduce.pipeline import Pipeline, StagePlan, write_json, write_table

__all__ = ["Pipeline", "StagePlan", "write_json", "write_table"]
