"""What the tasks measure and draw, as plain functions: metrics, box geometry, the GAN
judge, plots, tables and adversarial attacks. Nothing here knows about runs or stages."""
