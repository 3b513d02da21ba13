"""Running items through a plan: stages (stages.py), streaming maps (flow.py), the one item runner (execute.py and its
async, batch and no-cache specialisations), the runtime policy and progress bars."""
